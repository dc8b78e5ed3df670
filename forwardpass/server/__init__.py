"""The OpenAI-compatible HTTP server (`forwardpass serve`), its web chat page and `forwardpass bench-serve`."""
