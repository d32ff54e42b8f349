package backhand

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/caddy-backhand/backhand/candidacy"
)

// byCookie's cookie values, signed with the key derived from the cluster
// key, so clients cannot steer themselves to a node of their choice: the
// `backhand` directive sets them, the chain checks them.

// cookieValueFor is "<node>.<hex MAC of node>"; without a cluster key, just
// the node name.
func (n *node) cookieValueFor(name string) string {
	key := n.keys.Load().cookie
	if key == nil {
		return name
	}
	return name + "." + hex.EncodeToString(cookieMAC(key, name))
}

func cookieMAC(key []byte, name string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(name))
	return m.Sum(nil)[:16]
}

// CookieNode checks a cookie value and returns the node it names: the
// chain's byCookie reads it through candidacy.Cookies.
func (n *node) CookieNode(v string) (string, bool) {
	key := n.keys.Load().cookie
	if key == nil {
		return v, v != ""
	}
	i := strings.LastIndexByte(v, '.') // node names may contain dots; the MAC does not
	if i < 0 {
		return "", false
	}
	name, mac := v[:i], v[i+1:]
	got, err := hex.DecodeString(mac)
	return name, err == nil && hmac.Equal(got, cookieMAC(key, name))
}

// Interface guards
var _ candidacy.Cookies = (*node)(nil)
