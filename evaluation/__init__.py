"""``medrega-gateway evaluate``: the configured model measured on a site's labelled cases with
MedRegA's own evaluation metrics, through production's image, prompt and answer path
(docs/evaluation.md). Stage-independent: the CLI command only drives it."""
