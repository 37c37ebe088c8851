-- The example's own tables; the outbox table comes from `wqd outbox init -c wqd.yaml`.
CREATE TABLE IF NOT EXISTS orders (
    id         bigserial PRIMARY KEY,
    item       text NOT NULL,
    quantity   integer NOT NULL CHECK (quantity > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS stock (
    item          text PRIMARY KEY,
    left_in_stock integer NOT NULL CHECK (left_in_stock >= 0)
);
