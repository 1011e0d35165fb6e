/*
 * kamleak loopguard: LD_PRELOAD shim that keeps Asterisk on loopback.
 *
 * connect(), sendto(), sendmsg() and sendmmsg() to an IPv4/IPv6 address
 * outside 127.0.0.0/8 and ::1 fail with ENETUNREACH before reaching the
 * kernel, and one line per attempt goes to stderr (docker logs).
 *
 * Why: at load res_pjsip calls pj_gethostip(), which connect()s a UDP socket
 * to 1.1.1.1 and 1::1 to learn the default-route interface.  No datagram is
 * sent, but the IPv6 route lookup makes the kernel probe the default router
 * (an ICMPv6 neighbor solicitation leaves eth0).  With the shim pjlib falls
 * back to enumerating interfaces, which sends nothing.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int offbox(const struct sockaddr *sa, socklen_t len, const char *what)
{
    char buf[INET6_ADDRSTRLEN] = "?", line[160];
    int bad = 0;

    if (!sa)
        return 0;
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        uint32_t a = ntohl(in->sin_addr.s_addr);
        bad = a != INADDR_ANY && (a >> 24) != 127;
        if (bad)
            inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf));
    } else if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a))
            bad = a->s6_addr[12] != 127;
        else
            bad = !IN6_IS_ADDR_LOOPBACK(a) && !IN6_IS_ADDR_UNSPECIFIED(a);
        if (bad)
            inet_ntop(AF_INET6, a, buf, sizeof(buf));
    }
    if (bad) {
        int n = snprintf(line, sizeof(line), "kamleak-loopguard: blocked %s to %s\n", what, buf);
        if (n > 0 && write(2, line, (size_t)n) < 0) { /* nothing to do */ }
        errno = ENETUNREACH;
    }
    return bad;
}

#define REAL(name) static __typeof__(name) *real_##name; \
    if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
    REAL(connect);
    if (offbox(sa, len, "connect"))
        return -1;
    return real_connect(fd, sa, len);
}

ssize_t sendto(int fd, const void *b, size_t n, int fl, const struct sockaddr *sa, socklen_t len)
{
    REAL(sendto);
    if (offbox(sa, len, "sendto"))
        return -1;
    return real_sendto(fd, b, n, fl, sa, len);
}

ssize_t sendmsg(int fd, const struct msghdr *m, int fl)
{
    REAL(sendmsg);
    if (m && offbox(m->msg_name, m->msg_namelen, "sendmsg"))
        return -1;
    return real_sendmsg(fd, m, fl);
}

int sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int fl)
{
    REAL(sendmmsg);
    for (unsigned int i = 0; i < n; i++)
        if (offbox(v[i].msg_hdr.msg_name, v[i].msg_hdr.msg_namelen, "sendmmsg"))
            return -1;
    return real_sendmmsg(fd, v, n, fl);
}
