package backhand

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/caddy-backhand/backhand/candidacy"
)

// byCookie's cookie values, signed with the key derived from the cluster
// key: the `backhand` directive sets them, the chain checks them. A client
// cannot make up a cookie for a node, but a value is the same for every
// client and never expires, so a client can return to (or pass around)
// any node whose cookie it has once been given.

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
	keys := n.keys.Load()
	key := keys.cookie
	if key == nil {
		return v, v != ""
	}
	i := strings.LastIndexByte(v, '.') // node names may contain dots; the MAC does not
	if i < 0 {
		return "", false
	}
	name, mac := v[:i], v[i+1:]
	got, err := hex.DecodeString(mac)
	if err != nil {
		return "", false
	}
	for _, k := range append([][]byte{key}, keys.acceptedCookies...) {
		if hmac.Equal(got, cookieMAC(k, name)) {
			return name, true // accept_keys' cookies too, while a key rotates
		}
	}
	return "", false
}

// Interface guards
var _ candidacy.Cookies = (*node)(nil)
