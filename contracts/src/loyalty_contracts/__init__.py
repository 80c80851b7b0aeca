"""loyalty_contracts"""
