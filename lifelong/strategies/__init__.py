"""lifelong.strategies"""
