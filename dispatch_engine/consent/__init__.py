"""Consent and feedback: suppressions, signed per-email tokens, and the one handler every
feedback reader (one-click unsubscribe, IMAP bounces, provider webhooks) calls."""
