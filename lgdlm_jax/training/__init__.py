"""Training machinery: set-up, state and step, gradients, optimizer, EMA, sharding, loop, logs, runtime."""
