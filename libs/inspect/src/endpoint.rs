//! What each OpenAI-compatible endpoint accepts, and where its model is named.

/// Where an endpoint names the model it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelUse {
    /// In the request body (`model`); every request runs that model.
    InBody,
    /// Lists or describes models; runs none.
    Listing,
    /// Somewhere the gateway does not read (files, batches, fine-tuning, assistants …):
    /// a batch file, for one, names its own models. A key with a model allow-list may
    /// not use these.
    Unchecked,
}

/// The body types an endpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepts {
    pub json: bool,
    pub multipart: bool,
}

/// One endpoint's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub model: ModelUse,
    /// `None`: the method carries no body (a body is refused).
    pub body: Option<Accepts>,
}

const JSON: Accepts = Accepts {
    json: true,
    multipart: false,
};
const FORM: Accepts = Accepts {
    json: false,
    multipart: true,
};
const EITHER: Accepts = Accepts {
    json: true,
    multipart: true,
};

/// Classifies `method path` (path starting with `/v1/`, no query).
pub fn classify(method: &str, path: &str) -> Endpoint {
    let body = match method {
        "GET" | "HEAD" | "DELETE" | "OPTIONS" => None,
        _ => Some(EITHER),
    };
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    let (model, accepts) = match (method, rest) {
        (
            "POST",
            "/chat/completions"
            | "/completions"
            | "/embeddings"
            | "/moderations"
            | "/responses"
            | "/audio/speech"
            | "/images/generations"
            | "/messages"
            | "/messages/count_tokens",
        ) => (ModelUse::InBody, JSON),
        ("POST", "/audio/transcriptions" | "/audio/translations" | "/images/variations") => {
            (ModelUse::InBody, FORM)
        }
        ("POST", "/images/edits") => (ModelUse::InBody, EITHER),
        ("GET", "/models") => (ModelUse::Listing, EITHER),
        ("GET", r) if r.starts_with("/models/") => (ModelUse::Listing, EITHER),
        _ => (ModelUse::Unchecked, EITHER),
    };
    Endpoint {
        model,
        body: body.map(|_| accepts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let chat = classify("POST", "/v1/chat/completions");
        assert_eq!(chat.model, ModelUse::InBody);
        assert_eq!(chat.body, Some(JSON));
        assert_eq!(
            classify("POST", "/v1/audio/transcriptions").body,
            Some(FORM)
        );
        assert_eq!(classify("POST", "/v1/messages").model, ModelUse::InBody);
        assert_eq!(classify("POST", "/v1/messages").body, Some(JSON));
        assert_eq!(classify("GET", "/v1/models").model, ModelUse::Listing);
        assert_eq!(classify("GET", "/v1/models").body, None);
        assert_eq!(classify("POST", "/v1/batches").model, ModelUse::Unchecked);
        assert_eq!(classify("POST", "/v1/files").body, Some(EITHER));
        // A trailing slash or other case is another endpoint as far as locks go.
        assert_eq!(
            classify("POST", "/v1/chat/completions/").model,
            ModelUse::Unchecked
        );
        assert_eq!(classify("DELETE", "/v1/files/file-1").body, None);
    }
}
