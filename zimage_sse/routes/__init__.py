"""HTTP routes: pages (HTML), api (JSON) and streams (SSE). None of them imports torch."""
