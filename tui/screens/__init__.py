"""The console's screens, one module each: requests, history, device, epochs."""
