"""What every epscoin implementation must agree on: framing and messages."""
