"""Fused sparse / masked parameter updates (reference torch, CPU, Triton). Empty until the
strategies that need them (continual backprop, GateON) land."""
