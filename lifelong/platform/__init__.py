"""lifelong.platform"""
