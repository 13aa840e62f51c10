-- Azure OpenAI's api-version of a connection (connection.created v3).
ALTER TABLE connections ADD COLUMN api_version TEXT;
