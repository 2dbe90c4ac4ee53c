-- The database side of examples/access.yaml, run by the database's owner.
-- Privileges are granted to a role the owner manages; ferry only makes
-- each pod's short-lived role a member of it.
CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, item text NOT NULL);
INSERT INTO orders VALUES (1, 'tea'), (2, 'coffee') ON CONFLICT DO NOTHING;
CREATE ROLE orders_reader NOLOGIN;
GRANT SELECT ON orders TO orders_reader;

-- The broker's admin role: it may create roles, hand out orders_reader,
-- and end the sessions of the roles it drops. Not a superuser.
-- Its password goes into the Secret payments/orders-db-admin, nowhere else;
-- label that Secret ferry.dev/brokerable=true so the broker may use it.
CREATE ROLE broker_admin LOGIN CREATEROLE PASSWORD :'broker_password';
GRANT orders_reader TO broker_admin WITH ADMIN OPTION;
GRANT pg_signal_backend TO broker_admin;
