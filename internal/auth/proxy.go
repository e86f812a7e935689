package auth

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ForwardedHeader is the header a trusted reverse proxy names its client
// in: X-Forwarded-For, a comma-separated list to which each proxy
// appends the address it got the request from.
const ForwardedHeader = "X-Forwarded-For"

// Proxies is a set of trusted reverse proxies (networks). A request that
// arrives from one of them is taken to come from the client the proxy
// names in X-Forwarded-For; from anywhere else the header is ignored, so
// a client cannot pick its own address. The zero value trusts nobody.
type Proxies []netip.Prefix

// ParseProxies reads networks ("127.0.0.1/32", "10.0.0.0/8") or single
// addresses ("::1") into a Proxies.
func ParseProxies(list []string) (Proxies, error) {
	var ps Proxies
	for _, s := range list {
		s = strings.TrimSpace(s)
		var p netip.Prefix
		var err error
		if strings.Contains(s, "/") {
			p, err = netip.ParsePrefix(s)
		} else {
			var a netip.Addr
			a, err = netip.ParseAddr(s)
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if err != nil {
			return nil, err
		}
		ps = append(ps, p.Masked())
	}
	return ps, nil
}

// trusts reports whether a is one of the proxies.
func (ps Proxies) trusts(a netip.Addr) bool {
	a = a.WithZone("").Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Trusts reports whether remote ("ip:port") is one of the proxies.
func (ps Proxies) Trusts(remote string) bool {
	if len(ps) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(remote)
	return err == nil && ps.trusts(ap.Addr())
}

// ClientAddr returns the address ("ip:port") of the client that sent r:
// r.RemoteAddr, unless that is a trusted proxy, in which case it is the
// rightmost address in X-Forwarded-For that is not itself a trusted
// proxy (port 0: the proxy does not say). A proxy that names no usable
// address leaves its own.
func (ps Proxies) ClientAddr(r *http.Request) string {
	if len(ps) == 0 {
		return r.RemoteAddr
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || !ps.trusts(peer) {
		return r.RemoteAddr
	}
	hops := strings.Split(strings.Join(r.Header.Values(ForwardedHeader), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		h := strings.TrimSpace(hops[i])
		if h == "" {
			continue
		}
		a, err := netip.ParseAddr(h)
		if err != nil {
			// A port (some proxies add one) or garbage: take the
			// address before the port, or stop believing the list.
			ap, perr := netip.ParseAddrPort(h)
			if perr != nil {
				return r.RemoteAddr
			}
			a = ap.Addr()
		}
		if !ps.trusts(a) {
			return netip.AddrPortFrom(a.WithZone("").Unmap(), 0).String()
		}
	}
	return r.RemoteAddr
}
