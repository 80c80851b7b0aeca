"""loyalty_suite"""
