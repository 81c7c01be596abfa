-- XEP-0484 FAST tokens: one client (user-agent id) of an account may log in
-- with a token instead of its password. A client holds at most two at once:
-- the newest, and the one it used last until it first uses the newest.
CREATE TABLE fast_tokens (
    owner TEXT NOT NULL,
    agent TEXT NOT NULL,
    token TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    -- Highest replay counter (the `count` attribute) seen with this token.
    counter BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, agent, token)
);
