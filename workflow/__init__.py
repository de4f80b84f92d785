"""Study completion (assembler), routing and the outbox: when a received study becomes a job."""
