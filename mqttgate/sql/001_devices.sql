-- The device registry. Nothing here stores a password in clear: password_hash
-- is an argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash), which
-- also records the parameters it was made with.
CREATE TABLE devices (
    id            text        PRIMARY KEY,
    type          text        NOT NULL CHECK (char_length(type) BETWEEN 1 AND 64),
    mqtt_user     text        NOT NULL UNIQUE,
    password_hash text        NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);

-- GET /devices?type=... pages through one type in id order.
CREATE INDEX devices_type_id ON devices (type, id);
