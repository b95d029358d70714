-- A deleted post keeps its row (without content) so that a replayed POST_CREATED
-- cannot bring it back; reads and new feed entries skip it.
ALTER TABLE posts ADD COLUMN deleted_at TIMESTAMPTZ;

-- Every current follow and where its view of the author begins: posts merged on read
-- (celebrity authors) reach a follower at or above min_post_id (0: all).
CREATE TABLE follows (
    user_id     BIGINT NOT NULL,
    author_id   BIGINT NOT NULL,
    min_post_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, author_id)
);

-- Posts that were not fanned out on write; readers merge them through follows.
CREATE TABLE merged_posts (
    author_id BIGINT NOT NULL,
    post_id   BIGINT NOT NULL,
    PRIMARY KEY (author_id, post_id)
);
