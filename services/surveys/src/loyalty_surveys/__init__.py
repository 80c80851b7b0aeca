"""loyalty_surveys"""
