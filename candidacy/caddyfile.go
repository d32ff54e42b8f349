package candidacy

import (
	"encoding/json"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-backhand/backhand/internal/cfgargs"
)

// ChainConfig is a candidacy chain as configured: `lb_policy backhand`
// embeds it, so its fields are the policy's JSON, and the `backhand`
// directive's block and offline tools (candidacytest.ParseChain) read
// its Caddyfile lines with UnmarshalLine.
type ChainConfig struct {
	// Chain is the list of candidacy functions, in order, each an object
	// with its name in "function" and its arguments, e.g.
	// {"function": "byAge", "max_age": "6s"}. Default: the recommended chain
	// (see DefaultChain).
	ChainRaw []json.RawMessage `json:"chain,omitempty" caddy:"namespace=backhand.functions inline_key=function"`

	// MaxAge is how recently a peer must have announced to start on the
	// list. Default: the backhand app's max_age.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// Predict says how load-like functions estimate a peer's requests in
	// flight between its announcements, which are up to an interval old:
	//
	//   - "off": the announced figure as it is (mod_backhand);
	//   - "blend": the announced figure plus the requests this node has
	//     sent the peer since that announcement and still has in flight
	//     (addPrediction; exact while the announcement is fresh);
	//   - "decay": this node's own requests in flight there, exactly, plus
	//     the others' share, which starts at what the announcement showed
	//     and decays, as the announcement ages, towards its long-run mean
	//     for that peer (time constant: the peer's announced response
	//     time). Stale figures then weigh little, persistent load from
	//     elsewhere still counts.
	//
	// Default: see DefaultPredict.
	Predict string `json:"predict,omitempty"`
}

// IsChainLine reports whether a Caddyfile line starting with name belongs
// to the chain: a candidacy function, max_age or predict.
func IsChainLine(name string) bool {
	switch name {
	case "max_age", "predict":
		return true
	}
	_, err := caddy.GetModule("backhand.functions." + name)
	return err == nil
}

// UnmarshalLine reads one line of a chain's block, d being at its first
// token: `max_age <duration>`, `predict off|blend|decay`, or a candidacy
// function with its arguments, e.g. `byAge 6s`, `byRandom`, `byLoad 0.5`.
// Any other name is an error.
func (cfg *ChainConfig) UnmarshalLine(d *caddyfile.Dispenser) error {
	switch name := d.Val(); name {
	case "max_age":
		return cfgargs.OneDuration(d, &cfg.MaxAge)
	case "predict":
		if err := cfgargs.OneString(d, &cfg.Predict); err != nil {
			return err
		}
		if _, err := ParsePredict(cfg.Predict); err != nil {
			return d.Err(err.Error())
		}
		return nil
	default:
		fn, err := unmarshalFunction(d, name)
		if err != nil {
			return err
		}
		cfg.ChainRaw = append(cfg.ChainRaw, fn)
		return nil
	}
}

// unmarshalFunction reads one candidacy function line.
func unmarshalFunction(d *caddyfile.Dispenser, name string) (json.RawMessage, error) {
	modID := "backhand.functions." + name
	if _, err := caddy.GetModule(modID); err != nil {
		return nil, d.Err(unknownFunction(name))
	}
	mod, err := caddyfile.UnmarshalModule(d, modID)
	if err != nil {
		return nil, err
	}
	if _, ok := mod.(Function); !ok {
		return nil, d.Errf("module %s is not a candidacy function", modID)
	}
	return caddyconfig.JSONModuleObject(mod, "function", name, nil), nil
}
