"""lifelong.streams"""
