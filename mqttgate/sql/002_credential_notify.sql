-- Cross-replica invalidation of the verified-credential cache
-- (mqttgate/credentials.py). Every replica LISTENs on 'mqttgate_credentials';
-- any change to a device row (rotate, disable, enable, delete, a rehash at
-- login) sends the affected mqtt_user as the payload, delivered at COMMIT. A
-- TRUNCATE sends an empty payload, which means "forget every user".
CREATE FUNCTION mqttgate_notify_credential_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('mqttgate_credentials', '');
        RETURN NULL;
    END IF;
    PERFORM pg_notify('mqttgate_credentials', OLD.mqtt_user);
    IF TG_OP = 'UPDATE' AND NEW.mqtt_user IS DISTINCT FROM OLD.mqtt_user THEN
        PERFORM pg_notify('mqttgate_credentials', NEW.mqtt_user);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER devices_credential_change
    AFTER UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION mqttgate_notify_credential_change();

CREATE TRIGGER devices_credential_truncate
    AFTER TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION mqttgate_notify_credential_change();
