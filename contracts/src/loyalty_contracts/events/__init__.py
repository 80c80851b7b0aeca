"""Event models grouped by producer: ``retail`` (inputs retailers publish) and one module per service."""
