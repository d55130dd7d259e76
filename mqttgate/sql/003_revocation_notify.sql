-- Cross-replica cut of live MQTT sessions (docs/api.md, "Live sessions on
-- every replica"). Every replica LISTENs on 'mqttgate_revocations' (on the
-- same connection as 'mqttgate_credentials') and disconnects the device's live
-- sessions it holds. A change that must end them sends, at COMMIT,
--
--     <change> ' ' <device id> ' ' <origin>
--
-- change:    'delete'; 'disable' (disabled_at set where it was NULL); 'rotate'
--            (password_hash or mqtt_user changed). Enabling, re-disabling and
--            the argon2 rehash at login (same password; the store marks that
--            statement with mqttgate.rehash = 'on') end nothing, so send nothing.
--            'truncate' (with an empty device id) means every device.
-- origin:    the writing replica's mqttgate.origin (set by the store in the same
--            statement; '' from psql or any other writer). The replica that made
--            the change has cut its own sessions already and skips it.
CREATE FUNCTION mqttgate_notify_revocation() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    origin text := coalesce(current_setting('mqttgate.origin', true), '');
    change text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('mqttgate_revocations', 'truncate  ' || origin);
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        change := 'delete';
    ELSIF OLD.disabled_at IS NULL AND NEW.disabled_at IS NOT NULL THEN
        change := 'disable';
    ELSIF NEW.mqtt_user IS DISTINCT FROM OLD.mqtt_user
          OR (NEW.password_hash IS DISTINCT FROM OLD.password_hash
              AND coalesce(current_setting('mqttgate.rehash', true), '') <> 'on') THEN
        change := 'rotate';
    ELSE
        RETURN NULL;
    END IF;
    PERFORM pg_notify('mqttgate_revocations', change || ' ' || OLD.id || ' ' || origin);
    RETURN NULL;
END;
$$;

CREATE TRIGGER devices_revocation
    AFTER UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION mqttgate_notify_revocation();

CREATE TRIGGER devices_revocation_truncate
    AFTER TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION mqttgate_notify_revocation();
