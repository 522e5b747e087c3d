"""Inter-pixel relations (IRN's boundary branch): network, pair labels, loss, training schedule.

Same layer as a method: imports data, backbones and the random-walk geometry only; the
affinity and random-walk *stages* that use it live with the other shared stages.
"""
