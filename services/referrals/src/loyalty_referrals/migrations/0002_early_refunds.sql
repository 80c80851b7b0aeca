-- Refunds that arrive before a customer's referral is decided (possibly before the purchase itself, since
-- they travel on another topic), by order id: {"order-1": [amount_minor, full]}.
ALTER TABLE customers ADD COLUMN early_refunds jsonb NOT NULL DEFAULT '{}';
