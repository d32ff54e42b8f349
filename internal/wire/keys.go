package wire

import (
	"crypto/hmac"
	"crypto/sha256"
)

// Labels that separate the keys derived from one secret.
const (
	announceLabel = "caddy-backhand announce v1"
	cookieLabel   = "caddy-backhand cookie v1"
	hopLabel      = "caddy-backhand hop v1"
)

// AnnounceKey derives the key that signs announcements (NewSigner) from the
// cluster's shared secret, so that the same secret can key other things
// (the hop marker, cookies) without one MAC being valid for another. It is
// nil without a secret.
func AnnounceKey(secret []byte) []byte {
	if len(secret) == 0 {
		return nil
	}
	return deriveKey(secret, announceLabel)
}

// CookieKey derives the key that authenticates byCookie's cookies from the
// cluster's shared secret. It is nil without a secret.
func CookieKey(secret []byte) []byte {
	if len(secret) == 0 {
		return nil
	}
	return deriveKey(secret, cookieLabel)
}

// deriveKey is HMAC-SHA256(secret, label): one key per use of the secret.
func deriveKey(secret []byte, label string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	return m.Sum(nil)
}
