package backhand

import "github.com/caddy-backhand/backhand/internal/wire"

// Figures are one node's resources as it announces them to its peers (see
// wire.Figures for the fields): Peer.Figures holds a peer's last ones, for
// the candidacy functions, this package's and third-party ones alike. The
// type lives with the wire format that carries it; this alias keeps its
// name in the package that candidacy functions import.
type Figures = wire.Figures
