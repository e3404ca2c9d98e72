/* A stand-in for bcryptprimitives.dll, which wine 8.0 lacks and every Rust >= 1.78 Windows
 * binary imports (ProcessPrng, for std's random keys): ../shared/PLATFORMS.md. Built with the
 * mingw compiler by .ci/run and put into the wine prefix's system32; not shipped. */
#include <windows.h>
#include <ntsecapi.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
