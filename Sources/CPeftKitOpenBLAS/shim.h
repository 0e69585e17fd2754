#ifndef CPEFTKIT_OPENBLAS_SHIM_H
#define CPEFTKIT_OPENBLAS_SHIM_H
#include <cblas.h>

// Debian's libopenblas carries LAPACK's Fortran symbols but no LAPACKE header; declare the few we call.
// Fortran convention: every argument by pointer, column-major matrices.
void sgetrf_(const int *m, const int *n, float *a, const int *lda, int *ipiv, int *info);
void sgetrs_(const char *trans, const int *n, const int *nrhs, const float *a, const int *lda, const int *ipiv,
             float *b, const int *ldb, int *info);
void sgecon_(const char *norm, const int *n, const float *a, const int *lda, const float *anorm, float *rcond,
             float *work, int *iwork, int *info);
void sgeqrf_(const int *m, const int *n, float *a, const int *lda, float *tau, float *work, const int *lwork,
             int *info);
void sorgqr_(const int *m, const int *n, const int *k, float *a, const int *lda, const float *tau, float *work,
             const int *lwork, int *info);
void sgelqf_(const int *m, const int *n, float *a, const int *lda, float *tau, float *work, const int *lwork,
             int *info);
void sorglq_(const int *m, const int *n, const int *k, float *a, const int *lda, const float *tau, float *work,
             const int *lwork, int *info);
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s, float *u,
             const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork, int *iwork, int *info);
void spotrf_(const char *uplo, const int *n, float *a, const int *lda, int *info);
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w, double *work,
             const int *lwork, int *iwork, const int *liwork, int *info);
float slange_(const char *norm, const int *m, const int *n, const float *a, const int *lda, float *work);
#endif
