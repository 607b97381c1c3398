-- A campaign's sending window, applied in each recipient's own time zone (the `timezone`
-- variable of its row, else the campaign's `timezone`), closed on its holiday dates.
ALTER TABLE campaigns
    ADD COLUMN send_window text,                         -- e.g. 'Mon-Fri 09:00-17:00'
    ADD COLUMN timezone text,                            -- IANA; NULL: UTC
    ADD COLUMN holidays date[] NOT NULL DEFAULT '{}';
