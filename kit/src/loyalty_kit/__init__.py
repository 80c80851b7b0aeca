"""loyalty_kit"""
