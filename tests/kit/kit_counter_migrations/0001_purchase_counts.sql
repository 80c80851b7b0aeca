CREATE TABLE purchase_counts (
    tenant      text NOT NULL,
    customer_id text NOT NULL,
    purchases   integer NOT NULL,
    PRIMARY KEY (tenant, customer_id)
);
