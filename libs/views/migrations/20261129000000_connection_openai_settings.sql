-- The OpenAI organization and project a connection's key bills (connection.created v2).
ALTER TABLE connections ADD COLUMN openai_organization TEXT;
ALTER TABLE connections ADD COLUMN openai_project TEXT;
