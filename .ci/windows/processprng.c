/*
 * ProcessPrng for Wine 8, which lacks bcryptprimitives.dll: Rust's
 * standard library takes its random bytes (HashMap keys) from that
 * function, so without it no Rust program starts under Wine 8.
 *
 * Built by .ci/windows/setup into the Wine prefix's system32. Fills the
 * buffer from advapi32's RtlGenRandom (exported as SystemFunction036),
 * which Wine has, in pieces that fit its ULONG length.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    const SIZE_T piece = 1u << 30;
    while (len > 0) {
        ULONG n = (ULONG)(len < piece ? len : piece);
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
