"""The RadSAM Segment Editor effect (registered by the RadSAM module at startup)."""
