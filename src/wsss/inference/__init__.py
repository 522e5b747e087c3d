"""wsss.inference"""
