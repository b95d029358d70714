-- Posts, hydrated into feeds at read time. post_id is the id of the POST_CREATED event.
CREATE TABLE posts (
    post_id    BIGINT      PRIMARY KEY,
    author_id  BIGINT      NOT NULL,
    content    TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- One row per feed entry: the source of truth of every feed.
CREATE TABLE feeds (
    user_id   BIGINT NOT NULL,
    post_id   BIGINT NOT NULL,
    author_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, post_id)
);

-- An unfollow removes one author's entries from one feed.
CREATE INDEX feeds_by_author ON feeds (user_id, author_id);
