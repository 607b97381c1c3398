-- A campaign's optional name (the lists show it), and its subject as its first recipient
-- gets it, rendered once at schedule time so the lists never show a raw template.
ALTER TABLE campaigns
    ADD COLUMN name text CHECK (char_length(name) BETWEEN 1 AND 200),
    ADD COLUMN first_subject text;
