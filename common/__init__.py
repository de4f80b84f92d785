"""The ground every stage imports: settings, database models and session, logging, audit trail."""
