"""The toy world, its judge, the toy and tiny models, and the demo."""
