"""loyalty_tiers"""
