-- DKIM signing per sender (RFC 6376): `dispatch-engine sender dkim-keygen` fills these.
-- dkim_private_key is sealed like transport passwords (secretbox.py: "sealed:v1:…"), never
-- plain; dkim_public_key is the base64 SubjectPublicKeyInfo published as the DNS record's p=.
-- All four are set together or not at all: a sender either signs or does not.

ALTER TABLE senders
    ADD COLUMN dkim_selector    text,
    ADD COLUMN dkim_domain      text,
    ADD COLUMN dkim_private_key text,
    ADD COLUMN dkim_public_key  text,
    ADD CONSTRAINT senders_dkim_all_or_none
        CHECK (num_nulls(dkim_selector, dkim_domain, dkim_private_key, dkim_public_key) IN (0, 4)),
    ADD CONSTRAINT senders_dkim_key_sealed
        CHECK (dkim_private_key IS NULL OR dkim_private_key LIKE 'sealed:%');
