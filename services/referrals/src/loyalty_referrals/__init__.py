"""loyalty_referrals"""
