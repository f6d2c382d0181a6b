// Package httpsig signs and verifies HTTP requests the way fediverse
// servers do: draft-cavage HTTP Signatures
// (draft-cavage-http-signatures-12, the Signature header Mastodon, Misskey,
// Pleroma, Akkoma, Friendica and GoToSocial send) and RFC 9421 HTTP Message
// Signatures (Signature-Input and Signature, in the profile Mastodon 4.5
// accepts), with the RFC 8941 structured fields RFC 9421 is written in.
//
// Signing: a Signer signs a request with draft-cavage (SignRequest, with a
// Digest of the body) or RFC 9421 (SignRequestRFC9421, with a
// Content-Digest). Verifying takes two steps: FromRequest (or
// MessageSignatureFromRequest) parses the signature and Check tests
// everything that needs no key (covered headers, digest, time window);
// then Verify checks the signature with the signer's public key, which the
// caller looks up by the signature's key id. Signing uses RSA;
// draft-cavage verification takes rsa-sha256, rsa-sha512, hs2019 and
// ed25519, RFC 9421 verification rsa-v1_5-sha256.
// GenerateKey and the PEM helpers make and exchange keys.
//
// Every parse or verification failure wraps ErrBadSignature. Parsed
// signatures and Signers are safe for concurrent use.
package httpsig
