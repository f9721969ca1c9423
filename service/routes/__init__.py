"""One router per concern: inference, models, health and metrics."""
