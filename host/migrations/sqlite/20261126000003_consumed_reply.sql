-- The reply sent when a message was consumed, sent again when a copy of the message arrives
-- (a resend after a timeout, whose first reply is late or stuck with a host that died).
ALTER TABLE consumed ADD COLUMN reply_id TEXT;
ALTER TABLE consumed ADD COLUMN reply_consumer TEXT;
ALTER TABLE consumed ADD COLUMN reply_body TEXT;
