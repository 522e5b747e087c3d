"""wsss.segmentation"""
