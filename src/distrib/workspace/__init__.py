"""The workspace as shipped: manifest scanning (Main) and the content-addressed store (worker)."""
