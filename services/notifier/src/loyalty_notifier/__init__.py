"""loyalty_notifier"""
